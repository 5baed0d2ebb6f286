//! Upstream providers (TO BE WRITTEN).
