"""The models a server holds: each loaded once per process and shared by every visitor of the page."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from arvision.errors import ArvisionError

# The page's search choices: label -> the spec name of ``arvision sample --search NAME:N``
SEARCH_KINDS = {"best-of-N": "bon", "beam": "beam", "TTS-VAR": "tts-var", "GridAR": "gridar"}
PROBE_N = 8  # the count a search is tried with when the server starts (TTS-VAR's default; GridAR: 4k)


@dataclass
class ServedModel:
    """One model of the page.  ``name``: what the picker shows and what the equivalent command names (a bundled
    name or the folder as given); ``searches``: the page's search labels this model supports -> spec names;
    ``search_note``: why the others are missing (empty when none is)."""

    name: str
    pipe: object  # ARPipeline
    searches: dict[str, str] = field(default_factory=dict)
    search_note: str = ""

    @property
    def takes_text(self) -> bool:
        return self.pipe.takes_text

    def class_choices(self) -> list[tuple[str, int]]:
        """(label, class id) for a class picker: "k: name" where the model names its classes (and the name is not
        the id itself, as the digits' are), else "k"."""
        names = self.pipe.config.class_names
        out = []
        for k in range(self.pipe.config.num_classes):
            name = names[k] if names else None
            out.append((str(k) if name is None or name == str(k) else f"{k}: {name}", k))
        return out

    def defaults(self) -> dict:
        """The sampling settings a request that leaves them out uses (the model's stored ones, else its family's)."""
        return self.pipe.sampling_defaults()


def probe_searches(pipe) -> tuple[dict[str, str], str]:
    """Which of :data:`SEARCH_KINDS` this model can run, tried the way ``sample --search`` builds them (its verifier:
    the bundled digit classifier for class models, the bundled caption matcher for text models) -> (supported,
    why the others are not)."""
    from arvision.cli.sample import search_verifier
    from arvision.sampling.search import SearchSampler

    supported, why = {}, {}  # why: message -> the searches it refuses (one verifier may refuse them all)
    options = pipe.sampling_options()
    for label, name in SEARCH_KINDS.items():
        spec = f"{name}:{PROBE_N}"
        try:
            verifier = search_verifier(pipe, argparse.Namespace(search=spec, verifier=None))
            SearchSampler.for_pipeline(pipe, spec, verifier, options)
        except ArvisionError as e:
            why.setdefault(str(e), []).append(label)
            continue
        supported[label] = name
    return supported, "; ".join(f"{', '.join(labels)}: {message}" for message, labels in why.items())


def load_models(models: list[str] | None, device: str = "cpu") -> list[ServedModel]:
    """Load each MODEL (a folder, a Hub id or a bundled name; none: every bundled model) once."""
    from arvision.bundled import bundled_names
    from arvision.cli.loading import load_pipeline

    names = list(models) if models else bundled_names()
    if not names:
        raise ArvisionError("this build bundles no model: give a model folder, e.g. `arvision serve my-model`")
    if len(set(names)) < len(names):
        raise ArvisionError(f"a model is named twice: {' '.join(names)}")
    served = []
    for name in names:
        pipe = load_pipeline(name, device)
        searches, note = probe_searches(pipe)
        served.append(ServedModel(name, pipe, searches, note))
    return served
