//! Configuration (TO BE WRITTEN).
