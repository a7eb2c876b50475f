"""The data layer: which rows belong to datum n, the encoder's features, and batch sources.

In-memory data are sliced on the device (:mod:`avi.data.rows`, :mod:`avi.data.batch`),
memory-mapped data are read per chunk (:mod:`avi.data.stream`), and several devices hold a share
of the rows each (:mod:`avi.data.shard`); :mod:`avi.data.prepare` turns a model and its
arguments into what a step needs.
"""
