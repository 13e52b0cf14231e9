"""Given names and surnames, Romanian and English, for finding names where no model can.

No Romanian named-entity model ships in a package (spaCy's ``ro_core_news_*`` are not on
PyPI), so Romanian names are found by these lists and the context rules of
``ai.redaction.names``. The lists hold the most frequent names of Romania's civil registry
and of the UK's and US's (public frequency tables), folded (``ai.text.fold``). Names that
are also everyday words ("Mark", "Will", "Grace", "Floare", "Speranța") are left out of
``GIVEN`` and kept in ``GIVEN_AMBIGUOUS``: they count only after a cue such as "my name
is" or "domnul", never on their own.
"""

from __future__ import annotations

from ai.text import fold


def _folded(text: str) -> frozenset[str]:
    return frozenset(fold(word) for word in text.split())


GIVEN = _folded(
    # Romanian, women
    """
    maria elena ioana andreea ana mihaela cristina alexandra daniela gabriela alina
    georgiana nicoleta adriana ramona florentina roxana simona mariana irina oana monica
    laura diana carmen claudia raluca bianca larisa denisa teodora iuliana loredana
    camelia corina luminița valentina cătălina anca adina lavinia silvia veronica
    angela aurelia doina rodica violeta gheorghița ecaterina elisabeta lucia madalina
    mădălina alina-maria ionela petronela sorina cornelia livia otilia paula sabina
    """
    # Romanian, men
    """
    ion ioan andrei alexandru mihai gheorghe constantin vasile nicolae ștefan florin
    daniel marian adrian cristian gabriel dumitru petru costel cosmin bogdan răzvan
    marius ionuț sorin ciprian lucian cătălin claudiu valentin vlad radu dragoș octavian
    emil silviu mircea horia liviu sebastian tudor iulian eugen ovidiu aurel laurențiu
    nicușor viorel dorin traian cornel teodor matei david luca tiberiu remus virgil
    """
    # English
    """
    john james robert michael william david richard joseph thomas charles christopher
    daniel matthew anthony donald steven paul andrew joshua kenneth kevin brian george
    edward ronald timothy jason jeffrey ryan jacob gary nicholas eric jonathan stephen
    larry justin scott brandon benjamin samuel gregory alexander patrick jack dennis
    peter oliver harry charlie oscar henry
    mary patricia jennifer linda elizabeth barbara susan jessica sarah karen nancy lisa
    betty margaret sandra ashley kimberly emily donna michelle dorothy carol amanda
    melissa deborah stephanie rebecca sharon laura cynthia kathleen amy shirley angela
    helen anna brenda pamela nicole emma samantha katherine christine rachel catherine
    sophie olivia amelia isla ava jessica lucy chloe
    """
)
"""Given names that are names wherever they stand (capitalised by the transcript)."""

GIVEN_AMBIGUOUS = _folded(
    """
    mark will bill grace rose may june april frank sue pat art bob joy hope faith
    floare speranța viorica florica lumința dan ilie sandu
    """
)
"""Given names that are also words: names only after a cue ("my name is", "domnul")."""

SURNAMES = _folded(
    """
    popa popescu pop radu dumitru stoica stan gheorghe matei ciobanu constantin rusu
    munteanu mihai ionescu florea ilie toma dinu lazăr marin barbu tudor moldovan ene
    ungureanu vasile cristea sandu georgescu nistor dobre neagu zamfir ardelean oprea
    diaconu ion iordache preda niculescu nedelcu lungu enache voicu stanciu ispas
    manea anghel dragomir mocanu ivan dumitrescu bălan roman avram serban șerban costea
    gavrilă pavel sima stoian surdu nica marinescu paraschiv vlad ilie tănase petrescu
    ionita ioniță coman grigore cojocaru dragu stanescu stănescu lupu olteanu mitrea
    eminescu
    smith johnson williams brown jones miller davis wilson anderson taylor thomas moore
    martin jackson thompson white harris clark lewis robinson walker young allen king
    wright scott green baker adams nelson hill campbell mitchell roberts carter phillips
    evans turner parker collins edwards stewart morris murphy cook rogers morgan cooper
    peterson bailey reed kelly howard cox ward richardson watson brooks wood james
    bennett gray hughes price sanders patel hall
    """
)
"""Surnames: a capitalised one after a given name makes the name two words."""

SURNAME_ENDINGS: tuple[str, ...] = ("escu", "eanu", "anu", "oiu", "aru", "ache", "ica")
"""Endings of Romanian surnames, folded (``Popescu``, ``Munteanu``, ``Ciobotaru``,
``Pătrică``): a capitalised word that ends so, after a given name, is its surname."""
