//! An incremental Server-Sent Events parser (TO BE WRITTEN — see the helper brief).
