"""The run folder, the interface every command shares: its layout, its typed summary, its probability
stores, and the resolution of RUNS arguments. Nothing outside this wing spells a run-folder file name."""
