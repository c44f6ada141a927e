"""The pipeline's stages, one module each: prepare (shards), teacher, analyze (masks), train
(fit and test one job), claims, study and its report, visualize."""
