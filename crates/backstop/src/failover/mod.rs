//! The failover engine (TO BE WRITTEN).
