pub mod config;
pub mod admission;
pub mod metrics;
pub mod upstream;
pub mod proxy;
pub mod shutdown;
