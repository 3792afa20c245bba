"""A tracked lesion's identity: id, name, display colour and DICOM TrackingUID, shared by all timepoints."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.uid import generate_uid

# Distinct, colour-blind-friendly display colours (RGB 0..1), cycled by lesion id.
PALETTE = (
    (0.90, 0.62, 0.00), (0.34, 0.71, 0.91), (0.00, 0.62, 0.45), (0.94, 0.89, 0.26),
    (0.00, 0.45, 0.70), (0.84, 0.37, 0.00), (0.80, 0.47, 0.65), (0.60, 0.60, 0.60),
)


def colour_for(lesion_id: int) -> tuple[float, float, float]:
    """The display colour of a lesion id (the same on every timepoint and in every front end)."""
    return PALETTE[(int(lesion_id) - 1) % len(PALETTE)]


@dataclass
class Lesion:
    """Identity of one tracked lesion. ``lesion_id`` >= 1 is the label value on every scan's label map;
    ``tracking_uid`` is generated once and reused on every timepoint's DICOM-SEG."""

    lesion_id: int
    name: str = ""
    colour: tuple[float, float, float] | None = None
    tracking_uid: str = field(default_factory=generate_uid)

    def __post_init__(self):
        if int(self.lesion_id) < 1:
            raise ValueError(f"lesion id must be >= 1, got {self.lesion_id}")
        self.lesion_id = int(self.lesion_id)
        self.name = self.name or f"Lesion {self.lesion_id}"
        self.colour = tuple(self.colour) if self.colour is not None else colour_for(self.lesion_id)

    def to_dict(self) -> dict:
        return {"lesion_id": self.lesion_id, "name": self.name, "colour": list(self.colour),
                "tracking_uid": self.tracking_uid}

    @classmethod
    def from_dict(cls, d: dict) -> "Lesion":
        return cls(lesion_id=d["lesion_id"], name=d.get("name", ""), colour=d.get("colour"),
                   tracking_uid=d.get("tracking_uid") or generate_uid())
