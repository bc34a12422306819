/* MPI hello: each rank says its rank, the number of ranks and its host.
 * On the testbed (README.md, "MPI across nodes"):
 *   cp docs/examples/mpi_hello.c data/
 *   docker compose exec node0 mpicc -o mpi_hello mpi_hello.c
 *   docker compose exec node0 flux run -N3 -n6 -t 2m ./mpi_hello
 */
#include <mpi.h>
#include <stdio.h>

int main (int argc, char **argv)
{
    int rank, size, len, sum = 0;
    char host[MPI_MAX_PROCESSOR_NAME];

    MPI_Init (&argc, &argv);
    MPI_Comm_rank (MPI_COMM_WORLD, &rank);
    MPI_Comm_size (MPI_COMM_WORLD, &size);
    MPI_Get_processor_name (host, &len);
    /* A collective, so that the ranks reach each other across the nodes. */
    MPI_Allreduce (&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    printf ("rank %d of %d on %s (sum of ranks %d)\n", rank, size, host, sum);
    fflush (stdout); /* before MPI_Finalize, which can hang with the image's MPICH */
    MPI_Finalize ();
    return 0;
}
