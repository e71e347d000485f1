//! Plans of steps, per-host argument templates and asset sets, for the job engine.
