"""Sending a run to the experiment trackers a team already uses (``bench run --track NAME``): the
trackers are plugins (``bench_trackers``); this wing feeds them from the run."""
