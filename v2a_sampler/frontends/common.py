"""What the front ends share: exit codes and output naming."""

#: Exit code for bad arguments or inputs.
EXIT_USAGE = 2
#: Exit code for a run that failed (loading a model, sampling, writing).
EXIT_RUNTIME = 1
#: ``video.mp4`` -> ``video_v2a.mp4``: the name of a muxed output (the CLI and manifest runs).
MUX_SUFFIX = "_v2a"
