pub mod config;
pub mod admission;
pub mod metrics;
pub mod upstream;
