"""Parallelisms of the runtime other than the pipeline schedules: process groups, tensor and
sequence parallelism, data parallelism with ZeRO stages 0 to 3, expert parallelism, context
parallelism (ring attention) and activation recomputation, applied to a model chunk by
`runtime.parallel.apply.parallelize`."""
