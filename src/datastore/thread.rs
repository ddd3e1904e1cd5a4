pub struct DatastoreHandle;
pub struct DatastoreThreadConfig;
pub struct DriverConfig;
pub fn spawn_datastore_thread() {}
