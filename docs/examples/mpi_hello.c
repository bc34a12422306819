/* MPI hello: each rank says its rank, the number of ranks and its host.
 * On the testbed: cp docs/examples/mpi_hello.c data/
 *   docker compose exec node0 mpicc -o mpi_hello mpi_hello.c
 *   docker compose exec node0 flux run -N3 -n6 ./mpi_hello
 */
#include <mpi.h>
#include <stdio.h>

int main (int argc, char **argv)
{
    int rank, size, len;
    char host[MPI_MAX_PROCESSOR_NAME];

    MPI_Init (&argc, &argv);
    MPI_Comm_rank (MPI_COMM_WORLD, &rank);
    MPI_Comm_size (MPI_COMM_WORLD, &size);
    MPI_Get_processor_name (host, &len);
    /* A collective, so that every rank reaches every other one. */
    int sum = 0;
    MPI_Allreduce (&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    printf ("rank %d of %d on %s (sum of ranks %d)\n", rank, size, host, sum);
    MPI_Finalize ();
    return 0;
}
