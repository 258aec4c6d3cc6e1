"""`python -m mergehub.action`: the GitHub Action's entry point (action.yml); see mergehub/interfaces/action.py."""

from mergehub.interfaces.action import main

if __name__ == "__main__":
    raise SystemExit(main())
