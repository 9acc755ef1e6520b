//! The OCI spec of a CRI container: the image config merged with the CRI config.
