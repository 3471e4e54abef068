"""AWS and UserHub on this machine: moto's server (the `local` extra), Lambda's SQS event source mapping, and the
fake UserHub. The demo, the scenarios, the tests and the benchmarks all meet the same ones."""
