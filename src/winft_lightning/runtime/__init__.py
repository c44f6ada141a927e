"""What a run stands on: the artifact store and its lock, the process world (torchrun, SLURM),
content hashes, checkpoint reading, the machine record, Hydra resolvers, atomic files."""
