"""``make bench`` (``python -m bench``): every stage against its limit, one JSON file.

Sections, one module each (shared pieces in ``benchlib``): ``sec_attention``, ``sec_analysis``,
``sec_train``, ``sec_overhead``, ``sec_data``, ``sec_memory``. Run on their own:
``python -m bench.ab`` (step ratios against another checkout), ``python -m bench.headline``
(the headline experiment on a GPU, measured by ``gpu_stats``) and ``python -m bench.flex_probe``
(compiled FlexAttention's kernels)."""
