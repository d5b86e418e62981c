"""spinedet.napari: the napari plugin (npe2 manifest ``napari.yaml``; ``pip install "spinedet[napari]"``).

* reader: spine-run's ``<stem>_boxes.csv`` -> a Shapes layer of per-slice rectangles (features
  ``spine_id``, ``score``, ``slice``) and a Points layer of spine centroids (:mod:`.io`);
* writer: a Shapes layer -> ``_boxes.csv``, exactly as spine-run writes it, so a corrected table
  (boxes deleted, moved or drawn) can be saved for spine-eval and spine-train (:mod:`.io`);
* widget "Detect spines": spine-run on an image layer (:mod:`.widget`).

The table <-> layer conversions (:mod:`.convert`, :mod:`.layers`, :mod:`.voxels`) import neither
napari nor Qt; only :mod:`.widget` needs them.  The runtime (``spinedet.runtime``) never imports this.
"""
