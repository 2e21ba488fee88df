"""A Python reward for the compare tests: ``_rewards:spaces`` (tests/compare is put on sys.path by the tests)."""


def spaces(prompts, completions):
    return [c.count(" ") / max(len(c), 1) for c in completions]
