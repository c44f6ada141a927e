"""Pure tensor math, batch-first, held to naive loops in the tests: the patch interactions
(SPEC 1-4), WinfT's attention core (SPEC 5), attention capture, one batch's analysis, and the
claims' statistics (SPEC 8-9). Nothing here imports Lightning or touches a file."""
