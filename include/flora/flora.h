#pragma once

// The one include a user needs: #include <flora/flora.h>

#include <flora/accumulation.h>
#include <flora/atomic_file.h>
#include <flora/fused_backward.h>
#include <flora/memory.h>
#include <flora/ops.h>
#include <flora/optimizer.h>
#include <flora/options.h>
#include <flora/projection.h>
#include <flora/quantization.h>
#include <flora/state_bytes.h>
#include <flora/statistics.h>
#include <flora/version.h>
