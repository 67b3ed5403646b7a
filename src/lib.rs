pub mod config;
pub mod admission;
