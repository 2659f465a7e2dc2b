"""Facts about the machine a run measured on: GPUs through NVML, the host, the environment."""
