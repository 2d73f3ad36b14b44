"""Media: video and audio files (:mod:`.io`), signal processing (:mod:`.audio`: mel filterbanks, Griffin-Lim) and
the embedded model's audio/video representations (:mod:`.specs`). Imports nothing else from the package."""
