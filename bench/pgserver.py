"""A throwaway PostgreSQL for the benchmarks: Debian's server binaries (/usr/lib/postgresql/*/bin,
not on PATH), `initdb` into a temporary directory, `wal_level = logical`, loopback only.

PostgreSQL refuses to run as root; as root, the server and its tools run as the `postgres`
user the package creates. The same set-up as corral-testkit's `postgres` module (the tests'),
in Python for the benchmark scripts.
"""
import glob
import os
import pwd
import shutil
import subprocess
import time

USER = "corral"  # the role Corral connects as (LOGIN REPLICATION, SCRAM password)
DATABASE = "shop"
PASSWORD = "bench-only-secret"


def bin_dir():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(p.split("/")[4]))
    if not found:
        raise SystemExit("PostgreSQL is not installed: apt-get install postgresql (bench/run.sh does)")
    return os.path.dirname(found[-1])


class Postgres:
    KIND = "postgres"
    PASSWORD = PASSWORD

    def __init__(self, work, port, settings=""):
        self.bin, self.port = bin_dir(), port
        self.dir = os.path.join(work, "pg")
        os.makedirs(self.dir, exist_ok=True)
        self.user = "postgres" if os.getuid() == 0 else None
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        data = os.path.join(self.dir, "data")
        self.run("initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        with open(os.path.join(data, "postgresql.conf"), "a") as f:
            f.write(f"listen_addresses = '127.0.0.1'\nport = {port}\n"
                    f"unix_socket_directories = '{self.dir}'\nwal_level = logical\n"
                    "max_replication_slots = 8\nmax_wal_senders = 8\n" + settings)
        with open(os.path.join(data, "pg_hba.conf"), "w") as f:
            f.write("local all all trust\nhost all postgres 127.0.0.1/32 trust\n"
                    "host all all 127.0.0.1/32 scram-sha-256\n")
        self.log = open(os.path.join(work, "postgres.log"), "w")
        self.proc = subprocess.Popen([os.path.join(self.bin, "postgres"), "-D", data],
                                     stdout=subprocess.DEVNULL, stderr=self.log, user=self.user,
                                     env=self.env())
        deadline = time.time() + 60
        while subprocess.run([os.path.join(self.bin, "pg_isready"), "-q", "-h", "127.0.0.1",
                              "-p", str(port)]).returncode != 0:
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"postgres did not start: see {self.log.name}")
            time.sleep(0.05)
        self.psql(f"CREATE ROLE {USER} LOGIN REPLICATION PASSWORD '{PASSWORD}'", db="postgres")
        self.psql(f"CREATE DATABASE {DATABASE} OWNER {USER}", db="postgres")

    def env(self):
        e = dict(os.environ, LC_ALL="C")
        e.pop("PGPASSWORD", None)
        return e

    def run(self, tool, *args):
        subprocess.run([os.path.join(self.bin, tool), *args], check=True, user=self.user,
                       env=self.env(), stdout=subprocess.DEVNULL)

    def psql_argv(self, db=DATABASE):
        return [os.path.join(self.bin, "psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
                "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", db]

    def psql(self, sql, db=DATABASE):
        out = subprocess.run(self.psql_argv(db) + ["-c", sql], check=True, capture_output=True,
                             text=True, env=self.env())
        return out.stdout

    def create_table(self, rows):
        self.psql(f"CREATE TABLE packages (id int PRIMARY KEY, name text); "
                  f"ALTER TABLE packages OWNER TO {USER}; "
                  f"INSERT INTO packages SELECT g, 'n' FROM generate_series(1, {rows}) g")

    def session_argv(self):
        return self.psql_argv()

    @staticmethod
    def marker(n):
        return f"\\echo committed-{n}"

    def dsn(self):
        return f"host=127.0.0.1 port={self.port} user={USER} dbname={DATABASE}"

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
