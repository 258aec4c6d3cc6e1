"""The mergehub Space's entry point: builds the page from `mergehub.interfaces.space` and serves it."""

import logging

from mergehub.interfaces.space import build_app

logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logging.getLogger("mergehub").setLevel(logging.INFO)

demo = build_app()

if __name__ == "__main__":
    demo.launch()
