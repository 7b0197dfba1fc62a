"""The "medseg" dock widget: one tab per panel (SAM2, Cohort, Reference prompting, Baseline, Metrics)."""

from __future__ import annotations

import napari
from qtpy.QtWidgets import QScrollArea, QTabWidget, QVBoxLayout, QWidget

from napari_plugin._baseline_panel import BaselinePanel
from napari_plugin._cohort_panel import CohortPanel
from napari_plugin._keys import bind_shortcuts
from napari_plugin._metrics_panel import MetricsPanel
from napari_plugin._model_picker import LoadedModels
from napari_plugin._reader import claim_reader_patterns
from napari_plugin._reference_panel import ReferencePanel
from napari_plugin._sam2_panel import Sam2Panel


class MedsegWidget(QWidget):
    """The plugin's dock widget; each panel is an attribute.

    ``sam2``, ``cohort``, ``reference``, ``baseline``, ``metrics``.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        claim_reader_patterns()  # from now on File ▸ Open reads medical formats with medseg, without asking
        models = LoadedModels()  # shared: a model loads once, whichever panel asks first
        self.sam2 = Sam2Panel(napari_viewer, models)
        self.cohort = CohortPanel(napari_viewer, self.sam2)
        self.sam2.protected = self.cohort.protected  # Save never suggests or writes the cohort's truth
        self.reference = ReferencePanel(napari_viewer, models)
        self.baseline = BaselinePanel(napari_viewer)
        self.metrics = MetricsPanel(napari_viewer)
        self.tabs = QTabWidget()
        panels = ((self.sam2, "SAM2"), (self.cohort, "Cohort"), (self.reference, "Reference"),
                  (self.baseline, "Baseline"), (self.metrics, "Metrics"))
        for panel, title in panels:
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setWidget(panel)
            self.tabs.addTab(scroll, title)
        self.setMinimumWidth(430)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)
        bind_shortcuts(napari_viewer, self, {**self.sam2.actions, **self.cohort.actions})
