//! The simulated GPU engine.

pub mod openai;
pub mod params;
pub mod tokenizer;

pub use params::EngineParams;
