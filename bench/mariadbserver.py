"""A throwaway MariaDB for the benchmarks: Debian's `mariadbd`, `mariadb-install-db` into a
temporary directory, the row binlog with full metadata, loopback only. The same set-up as
corral-testkit's `mariadb` module (the tests'), in Python for the benchmark scripts.
"""
import os
import shutil
import subprocess
import time

USER = "corral"  # the user Corral logs in as (replication grants, a password)
DATABASE = "shop"
PASSWORD = "bench-only-secret"


class MariaDb:
    KIND = "mariadb"
    PASSWORD = PASSWORD

    def __init__(self, work, port):
        if not shutil.which("mariadbd"):
            raise SystemExit("MariaDB is not installed: apt-get install mariadb-server mariadb-client")
        self.port, self.dir = port, os.path.join(work, "mariadb")
        data, tmp = os.path.join(self.dir, "data"), os.path.join(self.dir, "tmp")
        os.makedirs(tmp, exist_ok=True)
        root = ["--user=root"] if os.getuid() == 0 else []
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}",
                        "--auth-root-authentication-method=normal", "--skip-test-db",
                        "--innodb-use-native-aio=0", f"--tmpdir={tmp}", *root],
                       check=True, capture_output=True)
        self.log = os.path.join(work, "mariadb.log")
        self.proc = subprocess.Popen([
            "mariadbd", "--no-defaults", f"--datadir={data}", "--bind-address=127.0.0.1",
            f"--port={port}", f"--socket={self.dir}/mysqld.sock", f"--pid-file={self.dir}/mysqld.pid",
            f"--log-error={self.log}", f"--log-bin={data}/binlog", "--binlog-format=ROW",
            "--binlog-row-image=FULL", "--binlog-row-metadata=FULL", "--server-id=1",
            "--skip-name-resolve", "--character-set-server=utf8mb4",
            "--innodb-use-native-aio=0", f"--tmpdir={tmp}",
            # Like the PostgreSQL bench's fsync = off: the disk is not what is measured.
            "--innodb-flush-log-at-trx-commit=0", "--sync-binlog=0", *root],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while subprocess.run(self.client_argv("") + ["-e", "SELECT 1"],
                             capture_output=True).returncode != 0:
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mariadbd did not start: see {self.log}")
            time.sleep(0.05)
        self.sql(f"CREATE DATABASE {DATABASE}; "
                 f"CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; "
                 f"GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO '{USER}'@'%'; "
                 f"GRANT SELECT ON {DATABASE}.* TO '{USER}'@'%'; "
                 f"GRANT ALL ON corral.* TO '{USER}'@'%';", db="")

    def client_argv(self, db=DATABASE):
        argv = ["mariadb", "--no-defaults", "--protocol=TCP", "-h", "127.0.0.1", "-P",
                str(self.port), "-u", "root", "--batch", "--skip-column-names"]
        return argv + ([db] if db else [])

    def sql(self, sql, db=DATABASE):
        return subprocess.run(self.client_argv(db) + ["-e", sql], check=True,
                              capture_output=True, text=True).stdout

    def env(self):
        return dict(os.environ)

    def create_table(self, rows):
        self.sql("CREATE TABLE packages (id INT PRIMARY KEY, name VARCHAR(64)) ENGINE=InnoDB; "
                 f"INSERT INTO packages SELECT seq, 'n' FROM seq_1_to_{rows}")

    def session_argv(self):
        return self.client_argv() + ["--unbuffered"]

    @staticmethod
    def marker(n):
        return f"SELECT 'committed-{n}';"

    def dsn(self):
        return f"host=127.0.0.1 port={self.port} user={USER} dbname={DATABASE}"

    def stop(self):
        self.proc.kill()
        self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)
