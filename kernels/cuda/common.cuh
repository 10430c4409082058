// Forwarding header while the kernels move to include/: the helpers below now live in include/convert.cuh and
// include/reduce.cuh (namespace qkern). New code includes those directly.
#pragma once
#include "include/convert.cuh"
#include "include/reduce.cuh"

using qkern::f32_nan;
using qkern::from_f;
using qkern::load_f;
using qkern::round_to;
using qkern::row_sum;
using qkern::row_sums;
using qkern::store_f;
using qkern::to_f;
using qkern::Vec;
using qkern::warp_sum;
