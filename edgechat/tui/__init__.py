"""The Textual chat UI: a view over the turn pipeline in `edgechat.session` (run it with `edgechat chat`)."""
