"""The laboratory: a domain where answer quality is known exactly, and the paper's comparisons on it.

- :mod:`alma_data.lab.domain`: instructions with checkable constraints, phrased many ways,
  their correct answers and answers of graded quality.
- :mod:`alma_data.lab.oracle`: reads an instruction back from its text and scores an answer
  0..10. It only *measures*: no stage of a build imports it (``tests/test_lab.py`` checks).
- :mod:`alma_data.lab.seeds`: the seed SFT pairs and judge annotations (the oracle playing
  the human annotator), in the bundled seed format.
- :mod:`alma_data.lab.base_model`: a tiny model pretrained from scratch on the domain's text,
  the embedded model ``lab-tiny`` (registered with :mod:`alma_data.models` on import).
- :mod:`alma_data.lab.runner` and :mod:`alma_data.lab.measure`: ``alma-data lab``, sibling runs
  that share their upstream stages, measured by the oracle, with intervals over seeds.
"""

from pathlib import Path

from alma_data.models import register_embedded


def _builder(name: str):
    def build(out: Path) -> None:
        from alma_data.lab.base_model import build_embedded  # torch and the pretraining: only when built

        build_embedded(out, name)

    return build


# The lab's models join the embedded ones when the lab is imported (the command line's `lab`
# command imports it, so `alma-data build recipe=lab` finds it too); the foundations below
# never import the lab. Each has its own folder in the cache, <cache>/models/<name>
# (lab-tiny's as before). Their shapes: alma_data.lab.base_model.MODELS.
register_embedded("lab-tiny", "a ~0.8M-weight llama pretrained here on the lab's domain (recipe=lab, minutes once)",
                  _builder("lab-tiny"))
register_embedded("lab-small", "a ~4M-weight llama pretrained here on the lab's domain (model=lab-small, "
                  "half an hour once)", _builder("lab-small"))
