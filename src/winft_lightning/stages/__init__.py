"""The pipeline's stages, one module each: prepare (shards), cache (the run's shards, teacher
and masks as cache entries), analyze (masks), train (fit and test one job), validate, results,
claims and its report, the study's teachers, sweeps, parts, report and recompute, visualize."""
