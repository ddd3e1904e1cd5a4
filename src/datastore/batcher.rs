pub struct BatchLimits;
pub struct Batcher;
