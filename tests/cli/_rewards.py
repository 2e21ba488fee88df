"""A Python reward for the CLI tests: ``_rewards:brevity`` (tests/cli is put on sys.path by the test)."""


def brevity(prompts, completions):
    return [-len(c) / 100.0 for c in completions]
