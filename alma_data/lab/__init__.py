"""The laboratory: a domain where answer quality is known exactly, and the paper's comparisons on it.

- :mod:`alma_data.lab.domain`: instructions with checkable constraints, phrased many ways,
  their correct answers and answers of graded quality.
- :mod:`alma_data.lab.oracle`: reads an instruction back from its text and scores an answer
  0..10. It only *measures*: no stage of a build imports it (``tests/test_lab.py`` checks).
- :mod:`alma_data.lab.seeds`: the seed SFT pairs and judge annotations (the oracle playing
  the human annotator), in the bundled seed format.
- :mod:`alma_data.lab.base_model`: a tiny model pretrained from scratch on the domain's text.
- :mod:`alma_data.lab.runner` and :mod:`alma_data.lab.measure`: ``alma-data lab``, sibling runs
  that share their upstream stages, measured by the oracle, with intervals over seeds.
"""
