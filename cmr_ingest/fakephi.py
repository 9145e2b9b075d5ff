"""Realistic but fake patient identifiers for synthetic DICOM, so ingestion has PHI to remove.

Every value is drawn from a seeded generator; none belongs to a real person.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_SURNAMES = (
    "Abernethy",
    "Okonkwo",
    "Fairweather",
    "Castellanos",
    "Lindqvist",
    "Papadopoulos",
    "Thistlewood",
    "Nakamura",
    "Brennan",
    "Oyelaran",
    "Kowalczyk",
    "Whitcombe",
    "Haverford",
    "Delacroix",
    "Srinivasan",
    "Montgomery",
    "Achterberg",
    "Villanueva",
    "Ravensworth",
    "Mbeki",
    "Gallagher",
    "Rosenthal",
    "Takahashi",
    "Pemberton",
)
_GIVEN = (
    "Marguerite",
    "Oluwaseun",
    "Bartholomew",
    "Annika",
    "Rosalind",
    "Dimitrios",
    "Cornelius",
    "Yasmin",
    "Ignatius",
    "Philippa",
    "Tobiah",
    "Evangeline",
    "Leopold",
    "Saoirse",
    "Augustin",
    "Henrietta",
    "Florian",
    "Wilhelmina",
)
_INSTITUTIONS = (
    "St Aldric's Heart Centre",
    "Northgate Cardiac Institute",
    "Riverside Royal Infirmary",
    "Kelmscott University Hospital",
)
_STREETS = ("Harrowgate Lane", "Quillon Street", "Fennimore Road", "Ashcombe Row")


@dataclass(frozen=True)
class FakePatient:
    """The identifying values written into one synthetic study."""

    name: str  #: DICOM PN, ``Family^Given``
    patient_id: str
    other_id: str
    birth_date: str  #: YYYYMMDD
    sex: str
    age: str  #: DICOM AS, e.g. ``057Y``
    accession: str
    study_id: str
    study_date: str
    institution: str
    address: str
    referrer: str
    performer: str
    operator: str

    def identifiers(self) -> list[str]:
        """Values that must never appear in any ingestion output (long enough to search)."""
        family, given = self.name.split("^")
        return [
            self.name,
            family,
            given,
            self.patient_id,
            self.other_id,
            self.birth_date,
            self.accession,
            self.institution,
            self.address,
            *self.referrer.split("^"),
            *self.performer.split("^"),
            *self.operator.split("^"),
        ]


def fake_patient(rng: np.random.Generator) -> FakePatient:
    """Draw one fake patient and the staff and site of their study."""

    def person() -> str:
        return f"{rng.choice(_SURNAMES)}^{rng.choice(_GIVEN)}"

    year = int(rng.integers(1940, 2004))
    study_year = int(rng.integers(2018, 2023))
    return FakePatient(
        name=person(),
        patient_id=f"{int(rng.integers(10_000_000, 99_999_999))}",
        other_id=f"NHS{int(rng.integers(100_000_000, 999_999_999))}",
        birth_date=f"{year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        sex=str(rng.choice(["F", "M"])),
        age=f"{study_year - year:03d}Y",
        accession=f"ACC{int(rng.integers(10_000_000, 99_999_999))}",
        study_id=f"{int(rng.integers(1000, 9999))}",
        study_date=f"{study_year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        institution=str(rng.choice(_INSTITUTIONS)),
        address=f"{int(rng.integers(2, 300))} {rng.choice(_STREETS)}, Kelmscott",
        referrer=f"{rng.choice(_SURNAMES)}^{rng.choice(_GIVEN)}",
        performer=f"{rng.choice(_SURNAMES)}^{rng.choice(_GIVEN)}",
        operator=f"{rng.choice(_SURNAMES)}^{rng.choice(_GIVEN)}",
    )
