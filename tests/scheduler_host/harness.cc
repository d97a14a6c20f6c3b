// Runs kernels/tile_scheduler.cuh on the host (tests/test_tile_scheduler.py): every CTA of a grid walks its
// tiles and prints them, one line each: "cta m_block n_block row row_end group_a group_b compute k_begin k_end
// exists peer_only". The configuration comes in as macros: DGPT_LAYOUT, BLOCK_M, BLOCK_N, N, K, BANDS, CLUSTER,
// COLUMNS (tile columns per cluster: 2 for multicast_a).
// Arguments: M G GRID then the G group-layout values.
#include <cstdio>
#include <cstdlib>
#include <type_traits>
#include <utility>
#include <vector>

#define __device__
struct HostDim {
  unsigned x = 0;
};
HostDim blockIdx, gridDim;

#include "tile_scheduler.cuh"

template <class T, class = void>
struct HasExists : std::false_type {};
template <class T>
struct HasExists<T, std::void_t<decltype(std::declval<T>().exists)>> : std::true_type {};
template <class T>
bool exists_of(const T& tile) {
  if constexpr (HasExists<T>::value) {
    return tile.exists;
  } else {
    return true;
  }
}

int main(int argc, char** argv) {
  if (argc < 4) return 2;
  const unsigned m = std::atoi(argv[1]), groups = std::atoi(argv[2]), grid = std::atoi(argv[3]);
  std::vector<int> layout;
  for (int i = 4; i < argc; ++i) layout.push_back(std::atoi(argv[i]));
  dgpt::GemmParams params{};
  params.shape_m = m;
  params.num_groups = groups;
  params.grouped_layout = layout.empty() ? nullptr : layout.data();
  gridDim.x = grid;
  using Scheduler =
      dgpt::sched::TileScheduler<static_cast<dgpt::Layout>(DGPT_LAYOUT), BLOCK_M, BLOCK_N, N, K, BANDS, CLUSTER, COLUMNS>;
  for (unsigned cta = 0; cta < grid; ++cta) {
    blockIdx.x = cta;
    Scheduler scheduler(params);
    dgpt::sched::Tile tile{};
    for (int steps = 0; scheduler.next_tile(tile); ++steps) {
      if (steps > 1000000) return 3;  // a scheduler that never ends
      std::printf("%u %u %u %u %u %u %u %d %u %u %d %d\n", cta, tile.m_block, tile.n_block, tile.row, tile.row_end,
                  tile.group_a, tile.group_b, tile.compute ? 1 : 0, tile.k_begin, tile.k_end, exists_of(tile) ? 1 : 0,
                  tile.peer_only ? 1 : 0);
    }
  }
  return 0;
}
