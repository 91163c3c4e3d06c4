"""Cheap offscreen rendering of a MuJoCo model on a CPU (Mesa llvmpipe / OSMesa).

Measured on the SO-101 scene at 128 x 128 (docs/sim_task.md, `bench/bench_sim.py`): physics costs
~0.03 ms per MuJoCo step, a rendered frame ~190 ms as shipped. Almost all of it is rasterising
the arm's CAD meshes (200 k vertices, 8x multisampling, a 4096² shadow map) in software, for a
frame in which one pixel covers several millimetres. What this module turns off or coarsens:

- shadows (light_castshadow) and multisampling (`vis.quality.offsamples`);
- mesh detail: every mesh's triangles are re-drawn over a grid of `mesh_cell_m`, keeping one
  existing vertex per cell (vertex clustering). Only the *drawn* faces change (`mesh_face`,
  `mesh_facenum`); vertex positions and the convex hulls that collisions use are untouched, so
  the physics is bit-identical (tests/test_sim_task.py checks the trajectories).

Hand-written rather than a decimation library: quadric decimators return new vertices, and the
collision hulls index the model's existing ones, so only a re-indexing of faces can be applied in
place. Apply before the first frame is rendered: the renderer uploads meshes when it is created.
"""

from __future__ import annotations

import numpy as np


def simplify_mesh_faces(model, cell_m: float) -> tuple[int, int]:
    """Vertex-cluster every mesh's drawn faces on a `cell_m` grid; returns (faces before, after)."""
    if cell_m <= 0:
        raise ValueError(f"mesh cell size must be > 0 m, got {cell_m}")
    before = after = 0
    for mesh in range(model.nmesh):
        vert_adr, vert_num = int(model.mesh_vertadr[mesh]), int(model.mesh_vertnum[mesh])
        face_adr, face_num = int(model.mesh_faceadr[mesh]), int(model.mesh_facenum[mesh])
        verts = model.mesh_vert[vert_adr : vert_adr + vert_num]
        faces = model.mesh_face[face_adr : face_adr + face_num].copy()
        normals = model.mesh_facenormal[face_adr : face_adr + face_num].copy()
        cells = np.floor(verts / cell_m).astype(np.int64)
        _, first, cell_of = np.unique(cells, axis=0, return_index=True, return_inverse=True)
        representative = first[cell_of.reshape(-1)]  # vertex -> the first vertex of its cell
        clustered = representative[faces]
        distinct = (
            (clustered[:, 0] != clustered[:, 1])
            & (clustered[:, 1] != clustered[:, 2])
            & (clustered[:, 0] != clustered[:, 2])
        )
        _, unique_rows = np.unique(np.sort(clustered[distinct], axis=1), axis=0, return_index=True)
        keep = np.flatnonzero(distinct)[np.sort(unique_rows)]
        model.mesh_face[face_adr : face_adr + len(keep)] = clustered[keep]
        model.mesh_facenormal[face_adr : face_adr + len(keep)] = normals[keep]
        model.mesh_facenum[mesh] = len(keep)
        before += face_num
        after += len(keep)
    return before, after


def apply_render_settings(model, shadows: bool, multisample: bool, mesh_cell_m: float | None) -> None:
    """Set the visual options of `model` in place (before its first renderer is created)."""
    if not shadows:
        model.light_castshadow[:] = 0
    if not multisample:
        model.vis.quality.offsamples = 0
    if mesh_cell_m:
        simplify_mesh_faces(model, mesh_cell_m)
