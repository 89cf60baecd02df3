//! Everything that talks to OpenAI. For now: the circuit breaker shared by every call, which
//! `/health` and `/metrics` report on.

pub mod breaker;
