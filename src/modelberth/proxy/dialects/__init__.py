"""Translations between the APIs clients speak and the OpenAI API the upstreams speak: pure
functions and stream translators, no I/O. One module (or a few) per client API."""
