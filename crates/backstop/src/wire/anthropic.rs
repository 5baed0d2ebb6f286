//! Anthropic Messages (TO BE WRITTEN).
