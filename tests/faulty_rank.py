"""A test double for one rank failing alone: `python faulty_rank.py RANK:STEP pythia-args...` runs
Pythia with that rank's gradient reduction raising RuntimeError at that step (nothing else can
make one rank of an MPI job fail on demand)."""
import sys

from pythia.training import parallel


def main() -> None:
    rank, step = (int(v) for v in sys.argv[1].split(":"))
    reduce = parallel.MPIReducer.reduce_gradients
    calls = [0]

    def failing(self, flat):
        calls[0] += 1
        if self.comm.Get_rank() == rank and calls[0] == step:
            raise RuntimeError(f"injected failure at step {step}")
        return reduce(self, flat)
    parallel.MPIReducer.reduce_gradients = failing
    sys.argv = [sys.argv[0], *sys.argv[2:]]
    from pythia.cli import run
    run()


if __name__ == "__main__":
    main()
