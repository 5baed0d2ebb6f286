//! OpenAI Chat Completions (TO BE WRITTEN).
