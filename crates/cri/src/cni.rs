//! CNI: pod networking through the plugins named by the first network config.
