//! OMP_NUM_THREADS for engines from the container's CPU quota (filled in next).
