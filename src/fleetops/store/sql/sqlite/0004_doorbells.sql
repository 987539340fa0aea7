-- fleetops schema 4: where each worker listens for "new work" doorbells (udp://host:port).
ALTER TABLE workers ADD COLUMN bell TEXT;
