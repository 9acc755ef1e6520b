//! berthd: the CRI services.
